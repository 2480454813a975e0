"""Wire formats: parse and emit functions over buffers, no I/O.

Nothing here imports the rest of ustack.  The one native dependency is the
checksum routine in ustack._csum, a pure function compiled from ext/.
"""
