"""`ptft demo`: the whole workflow on data that installs with the packages.

data.py          bundled data -> files the CLI reads (digit image folders, text files)
text_data.py     docstrings of installed packages -> pre-training corpus + a held-out labelled task
stages.py        numbered stages with timings; CLI commands in-process; the deepspeed launch; a grid process
compare.py       digits fine-tuning grid (pre-trained vs scratch per label budget) and its table
text_compare.py  text grid (MLM / CLM exports vs scratch, bag-of-words baseline, spreads) and its table
workflow.py      the order of the stages, for --quick and the full run
"""
