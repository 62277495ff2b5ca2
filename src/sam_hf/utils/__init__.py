"""The official `segment_anything.utils` import paths, for code switched by one import (`transforms`)."""
