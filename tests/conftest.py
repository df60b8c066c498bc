import os

import torch

# The tests work on small tensors, where one thread is faster and steadier than several.
# SCOREKIT_TEST_THREADS sets another count: `./run test-numerics` reruns the suite with 2 threads,
# which splits reductions differently, to show that no tolerance relies on one summation order.
torch.set_num_threads(int(os.environ.get("SCOREKIT_TEST_THREADS", "1")))
