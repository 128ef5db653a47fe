"""equirecon: SSL pretraining with transformed-image reconstruction."""
