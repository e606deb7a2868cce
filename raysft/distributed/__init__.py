"""The Ray edges: Ray Train workers for one trial (``train_workers``). Nothing below this layer imports Ray."""
