"""Sequence parallelism on torch.distributed: LASP-1, LASP-2 and LASP-2H on gloo CPU ranks or NCCL GPUs."""
