from benchmark.cli import entry

entry()
