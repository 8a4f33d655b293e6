"""The names an option may take: the ground floor that config, data, model and optim share.

Plain tuples with no imports, so ``deeprec.config`` can offer and check every choice
without importing the layers that implement them; each of those layers checks at import
that it implements exactly these names.
"""

SPLITS = ("global-time", "user-time", "random", "given")
ORIENTATIONS = ("user", "item")  # rows are users (U-AutoRec) or items (I-AutoRec)
ACTIVATIONS = ("elu", "lrelu", "none", "relu", "selu", "sigmoid", "swish", "tanh")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adagrad", "sparse-adam")
LR_SCHEDULES = ("constant", "cosine")
OBJECTIVES = ("mse", "multinomial")
DATA_ON_DEVICE = ("auto", "yes", "no")
PRECISIONS = ("fp32", "bf16", "tf32")  # deeprec.precision
