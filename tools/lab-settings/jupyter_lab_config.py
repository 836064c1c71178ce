# JupyterLab settings for the course, passed by `make lab` (--config=tools/lab-settings/jupyter_lab_config.py).
#
# - overrides.json beside this file becomes JupyterLab's default settings: no Jupyter news
#   pop-up, no update check, and no per-cell execution timestamps written into the notebooks.
# - The terminal runs bash with bashrc beside this file: it reads the learner's ~/.bashrc and
#   then puts the course environment's bin folder first on the PATH, so `graphlab` works there.
from pathlib import Path

HERE = Path(__file__).resolve().parent

c = get_config()  # noqa: F821 (defined by Jupyter when it loads this file)
c.LabApp.app_settings_dir = str(HERE)
c.ServerApp.terminado_settings = {
    "shell_command": ["bash", "--rcfile", str(HERE / "bashrc"), "-i"],
}
