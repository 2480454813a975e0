"""Sans-IO TCP: sequence arithmetic, control block, congestion control and timers, no I/O."""
