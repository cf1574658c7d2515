"""One module per BPF map: a ctypes mirror of its key and value plus typed access."""
