"""Evaluation (SPEC §5): the action and segmentation metrics of a run (`action_metrics`, evaluate.py), the
generated-video dataset (`generated_dataset`, build_evaluation_dataset.py), the video-quality metrics
(`video_quality`, evaluate_dataset.py) and the pretrained feature networks they use (`feature_networks`)."""
