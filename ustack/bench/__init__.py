"""`ustack bench`: ustack against kernel sockets, same client, same machine.

loadgen.py    the client (worker processes: tight blocking loops for
              ping-pong, an epoll loop for many connections), its
              mergeable log-bucket latency histogram, and a minimal
              kernel sink server (echo, discard, kv on uvloop/asyncio)
targets.py    the servers compared (one line each), starting and
              stopping them pinned to a CPU, and the /proc readers
scenarios.py  echo-latency, echo-rate, kv, bulk, connect-rate, idle;
              running every target in turn, repeated, and the
              load generator's own ceiling against the sink
report.py     the terminal tables, --json and --plot
cli.py        `add_bench_parser()` / `run_bench()` for `ustack bench`
"""
