"""Pretrained feature extractors: timm image models and Hugging Face text encoders."""
