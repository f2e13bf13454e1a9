"""What the chapters show: figures and tables drawn from the reference's and the lab's own data.

It sits on top of :mod:`normcourse.reference` and :mod:`normcourse.lab`; nothing below imports it.
"""
