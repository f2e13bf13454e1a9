"""One module per problem set, each defining ``PARTS`` (a list of :class:`normcourse.grading.parts.Part`)
and calling :func:`normcourse.grading.parts.register` on it."""
