"""install.sh's link and Docker-hint logic, run by bash itself (#16 item 17)."""

from __future__ import annotations

import re
import subprocess
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = (ROOT / "install.sh").read_text(encoding="utf-8")


def _function(name: str) -> str:
    one_line = re.search(rf"^{name}\(\) \{{ .*\}}$", SCRIPT, flags=re.M)
    match = one_line or re.search(rf"^{name}\(\) \{{\n.*?^\}}\n", SCRIPT, flags=re.S | re.M)
    assert match, name
    return match.group(0)


def bash(body: str, *, force_links: int = 0) -> subprocess.CompletedProcess[str]:
    prelude = "\n".join(
        [
            "set -euo pipefail",
            f"force_links={force_links}",
            _function("warn"),
            _function("place_link"),
            _function("docker_fix_lines"),
        ]
    )
    return subprocess.run(
        ["bash", "-c", f"{prelude}\n{body}"], capture_output=True, text=True, check=False
    )


def test_a_link_to_another_live_checkout_is_left_alone_and_said(tmp_path: Path) -> None:
    other, mine, link = tmp_path / "other-appliance", tmp_path / "mine", tmp_path / "appliance"
    other.write_text("")
    mine.write_text("")
    link.symlink_to(other)
    result = bash(f"place_link {mine} {link} || echo kept")
    assert link.readlink() == other
    assert "kept" in result.stdout
    assert "--force-links" in result.stderr


def test_force_links_or_a_dangling_link_is_re_pointed(tmp_path: Path) -> None:
    other, mine, link = tmp_path / "other-appliance", tmp_path / "mine", tmp_path / "appliance"
    other.write_text("")
    mine.write_text("")
    link.symlink_to(other)
    assert bash(f"place_link {mine} {link}", force_links=1).returncode == 0
    assert link.readlink() == mine
    link.unlink()
    link.symlink_to(tmp_path / "gone" / "appliance")  # that checkout's venv was removed
    assert bash(f"place_link {mine} {link}").returncode == 0
    assert link.readlink() == mine


def test_a_new_link_is_made(tmp_path: Path) -> None:
    mine, link = tmp_path / "mine", tmp_path / "appliance"
    mine.write_text("")
    assert bash(f"place_link {mine} {link}").returncode == 0
    assert link.readlink() == mine


def test_root_is_not_told_to_join_the_docker_group() -> None:
    assert "usermod" not in bash("docker_fix_lines 0").stdout
    assert "usermod -aG docker" in bash("docker_fix_lines 1000").stdout


def test_every_file_the_readme_points_to_is_in_the_clone() -> None:
    # #16 item 17: the README sent readers to ../shared/DESIGN.md, which a clone does not have.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#:]+)\)", readme)  # relative markdown links
    targets += re.findall(r"`((?:\.\./|docs/)[^`\s]+\.md)`", readme)  # paths written as code
    paths = [(ROOT / urllib.parse.unquote(t)).resolve() for t in targets]
    missing = [p for p in paths if not p.is_relative_to(ROOT) or not p.exists()]
    assert missing == []
