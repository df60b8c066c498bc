import torch

# The tests work on small tensors, where one thread is faster and steadier than several.
torch.set_num_threads(1)
