"""What the commands do, as library functions: no printing, no Typer, no Rich.

compress, decompress, inspect_file and report each open their inputs, make one pass over the
tensors and return a result object the CLI renders.
"""
