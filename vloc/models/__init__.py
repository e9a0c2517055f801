"""Plain-torch networks and their weight loading (no torchvision, nothing downloaded)."""
