"""Media input and output: mp4 writing/reading (PyAV) and image loading."""
