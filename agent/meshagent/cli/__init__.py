"""Command-line interface: thin commands; formatting lives in printers elsewhere."""
