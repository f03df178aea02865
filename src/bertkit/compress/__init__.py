"""Model compression: smaller, faster encoders from trained ones."""
