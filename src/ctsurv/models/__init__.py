"""Models: CT vision encoders, projector, language model, the composed CT-VLM and the survival head."""
