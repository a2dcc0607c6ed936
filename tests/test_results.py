

def test_git_commit_is_dirty_for_changed_code_but_not_for_rewritten_results(tmp_path):
    import subprocess

    from gadlib.results import git_commit

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "pkg").mkdir()
    (tmp_path / "results" / "table.md").write_text("old\n")
    (tmp_path / "pkg" / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    clean = git_commit(tmp_path)
    assert len(clean) == 40 and not clean.endswith("-dirty")
    (tmp_path / "results" / "table.md").write_text("new\n")          # a study run rewrote its outputs
    assert git_commit(tmp_path / "pkg") == clean                        # from any folder of the checkout
    (tmp_path / "pkg" / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path / "pkg") == clean + "-dirty"
    assert git_commit(tmp_path.parent / "no-such-folder") == "unknown"
