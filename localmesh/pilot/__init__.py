"""Pure translation, no I/O: the mesh state in, one route table per proxy out."""
