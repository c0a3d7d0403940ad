"""Training side of seg_perception: ERFNet, class tables, model files, datasets and training."""

import os

# OpenMP threads that spin while they wait stall for whole time slices when the CPU is shared
# (measured here: an ERFNet training step 15 s instead of 0.35 s at load 6 on 2 cores). Sleeping
# waiters cost little when the machine is idle. Set before torch loads its OpenMP runtime; a value
# in the environment wins.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
