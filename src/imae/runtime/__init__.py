"""What any job runs on, below training and evaluation alike: processes and devices (``distributed``), the
precision per device (``precision``), optimiser and learning-rate schedule helpers (``optim``)."""
