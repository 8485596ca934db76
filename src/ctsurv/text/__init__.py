"""Report text: CT-RATE abnormality labels from free text, the predefined questions and their canonical
answers read from reports (no torch); ``questions`` and ``findings`` are what the models import."""
