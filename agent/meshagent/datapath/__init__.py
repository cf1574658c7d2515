"""The kernel side: BPF programs compiled with BCC, maps, tc attachment, events."""
