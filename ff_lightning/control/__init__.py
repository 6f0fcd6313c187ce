"""The controller: decides the device share from measured step statistics (no Trainer)."""
