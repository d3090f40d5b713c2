"""What a fit uses besides its parts: callbacks, seeding, distillation, feature cache, the frozen-features baseline."""
