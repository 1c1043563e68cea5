"""Help texts of options several commands share."""

DATA_HELP = ("a text file (one sample a line, or JSONL with \"text\") for a text model: half its distinct "
             "samples evaluate, the other half calibrate, instead of the built-in corpus")
TASK_HELP = ("a Hugging Face folder: embedding, classification or causal-lm where config.json implies another "
             "(a classifier's encoder as a sentence encoder); default: from config.json")
