"""Test-wide settings. Tiny tensors gain nothing from intra-op threads; on a shared 2-core machine
OpenMP threads contend, and a 40 x 8 matmul takes milliseconds instead of microseconds."""

import torch

torch.set_num_threads(1)
