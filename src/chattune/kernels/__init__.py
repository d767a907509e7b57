"""Kernels: chattune's attention functions for packed training and serving (`attention`,
`blocked_attention`) and oneDNN-prepacked linear layers for CPU serving (`prepack`).

This package sits below `train/` and `serving/` and imports neither: both register and use
what is here."""
