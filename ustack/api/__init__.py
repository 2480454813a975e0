"""The native APIs: socket-like objects, an epoll-like readiness API, the per-thread Context.

- `ustack.api.socket.Socket`: TCP and UDP sockets with Python's socket semantics
  (`ustack.socket` is the module-like namespace over it).
- `ustack.api.epoll.Epoll`: register/modify/unregister/poll with EPOLL* masks.
- `ustack.api.context`: `current()`, `use()`, `close_current()`, `configure()`.

Submodules are imported on use; importing this package is cheap.
"""
