"""Trainable building blocks (torch ``nn.Module``s) shared by the trained methods."""
