"""MART (CVPR 2024): masked affective representation learning over video, audio and subtitles.

In progress (issue #12): the pieces below are tested on their own; the Method (model, losses,
data, configs) is not wired yet, so `config.method="mart"` is refused with one line.
"""
