"""The run directory: its layout and writes (layout), how a launch treats an existing one (judge),
checkpoints that count once complete and whole (checkpoints), one owner per directory (owner, lock),
and a full disk told as such (diskfull). The names other packages use, handed on:"""

from runner.rundir.checkpoints import (checkpoint_problem, checkpoints_dir, complete_checkpoints, finish_checkpoint,
                                       newest_usable_checkpoint, rotate_checkpoints)
from runner.rundir.judge import Launch, check_target, clear, decide, plan_differences, prepare
from runner.rundir.layout import (CHECKPOINT_MARKER, CHECKPOINTS, OWN_FILES, OWNER_MARKER, PREVIOUS, RUN_MARKER,
                                  files_containing, fs_error, is_marked, mark_complete, read_stored_plan,
                                  restart_metrics, write_config_yaml, write_json, write_plan, write_text_atomic)

__all__ = ["CHECKPOINT_MARKER", "CHECKPOINTS", "OWN_FILES", "OWNER_MARKER", "PREVIOUS", "RUN_MARKER", "Launch",
           "check_target", "checkpoint_problem", "checkpoints_dir", "clear", "complete_checkpoints", "decide",
           "files_containing", "finish_checkpoint", "fs_error", "is_marked", "mark_complete",
           "newest_usable_checkpoint", "plan_differences", "prepare", "read_stored_plan", "restart_metrics",
           "rotate_checkpoints", "write_config_yaml", "write_json", "write_plan", "write_text_atomic"]
