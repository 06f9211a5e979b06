"""One script per paper claim; each prints a table and writes it under docs/."""
