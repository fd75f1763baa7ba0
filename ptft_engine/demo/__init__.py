"""`ptft demo`: the whole workflow on data that installs with the packages.

data.py     bundled data -> files the CLI reads (digit image folders, text files)
stages.py   numbered stages with timings; CLI commands in-process; the deepspeed launch
compare.py  fine-tuning grid (pre-trained vs scratch per label budget) and its table
workflow.py the order of the stages, for --quick and the full run
"""
