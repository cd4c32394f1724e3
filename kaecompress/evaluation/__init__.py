"""Measuring codecs and models: PSNR/SSIM, BD-rate, rate-distortion curves against Pillow's codecs, and
speed benchmarks of the artefacts."""
