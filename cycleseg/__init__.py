"""cycleseg: semi-supervised semantic segmentation with a CycleGAN (Mondal et al. 2019), made fast."""
import sys

if sys.argv[:1] == ["-m"]:              # `python -m cycleseg.X` is starting: a signal before its main is one line
    from .usage import stop_before_start

    stop_before_start()
