"""Example bench plug-in: ``SoftContrastiveLoss`` (bench.losses) and ``center_contrastive``
(bench.methods). Nothing here is imported by bench unless a protocol names it."""
