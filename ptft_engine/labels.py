"""IGNORE_INDEX: the label of a position no loss is taken on (padding, unselected MLM
tokens, document ends, sub-words after a word's first). -100 is PyTorch's cross_entropy
default and Hugging Face's convention, so labels travel between the two unchanged."""
IGNORE_INDEX = -100
