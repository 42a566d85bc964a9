"""Generation with any registered generator: slot planning, compositing, labels, the sample writer."""
