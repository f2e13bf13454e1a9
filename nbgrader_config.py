"""nbgrader configuration for this course; the course root is this repository.

Source notebooks live in solutions/, generated releases in exercises/. Everything grading writes
(submissions, autograded copies, feedback, the gradebook) lives under grading/, which git ignores.
"""

import os

c = get_config()  # noqa: F821 (provided by traitlets when nbgrader loads this file)

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.environ.get("NORMCOURSE_GRADING_DIR", os.path.join(HERE, "grading"))

c.CourseDirectory.course_id = "normalization-layers-hands-on"
c.CourseDirectory.root = HERE
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
c.CourseDirectory.submitted_directory = os.path.relpath(os.path.join(WORK, "submitted"), HERE)
c.CourseDirectory.autograded_directory = os.path.relpath(os.path.join(WORK, "autograded"), HERE)
c.CourseDirectory.feedback_directory = os.path.relpath(os.path.join(WORK, "feedback"), HERE)
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(WORK, "gradebook.db")
# Only notebooks are part of an assignment; helper files stay out of releases.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", ".*"]

# Learner code is untrusted: a cell gets at most this long (nbgrader has no whole-notebook limit; the
# course's pipeline adds one around each notebook).
c.Execute.timeout = 60
c.Execute.interrupt_on_timeout = True
# A deleted test cell is restored from the gradebook and scores 0 instead of "needs manual grading".
c.OverwriteCells.add_missing_cells = True

# Releases: what replaces a solution.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# Collecting an LMS zip (`nbgrader zip_collect`, or `normcourse collect`): the course's plugins refuse
# path traversal, zip bombs and files that are not notebooks, and never overwrite a submission silently.
c.ZipCollectApp.extractor_plugin = "normcourse.grading.collect.SafeZipExtractor"
c.ZipCollectApp.collector_plugin = "normcourse.grading.collect.SubmissionCollector"
# Exporting grades (`nbgrader export`, or `normcourse export`): the ledger's status, reason and flags
# next to every score, late penalties clamped at zero.
c.ExportApp.plugin_class = "normcourse.grading.export.LedgerCsvExportPlugin"
