"""``envserve image scan``: run trivy or grype when one is installed, summarise its JSON, fail above a
severity; say plainly when no scanner is there (never "no vulnerabilities" without a scan). Also the
OS-layer check: Debian security updates pending in the image (apt, through the image's own sources)."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import EnvserveError, NoScanner

__all__ = [
    "SEVERITIES",
    "Finding",
    "NoScanner",
    "find_scanner",
    "parse_grype",
    "parse_trivy",
    "pending_security_updates",
    "run_scanner",
    "summarise",
]

SEVERITIES = ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")


@dataclass(frozen=True)
class Finding:
    id: str
    package: str
    installed: str
    fixed: str
    severity: str


def _severity(value: Any) -> str:
    text = str(value or "UNKNOWN").upper()
    return text if text in SEVERITIES else ("MEDIUM" if text == "MODERATE" else "UNKNOWN")


def parse_trivy(doc: Dict[str, Any]) -> List[Finding]:
    findings = []
    for result in doc.get("Results") or []:
        for v in result.get("Vulnerabilities") or []:
            findings.append(
                Finding(
                    v.get("VulnerabilityID", "?"),
                    v.get("PkgName", "?"),
                    v.get("InstalledVersion", ""),
                    v.get("FixedVersion", "") or "",
                    _severity(v.get("Severity")),
                )
            )
    return findings


def parse_grype(doc: Dict[str, Any]) -> List[Finding]:
    findings = []
    for match in doc.get("matches") or []:
        vuln = match.get("vulnerability", {})
        artifact = match.get("artifact", {})
        fixed = ", ".join((vuln.get("fix") or {}).get("versions") or [])
        findings.append(
            Finding(
                vuln.get("id", "?"),
                artifact.get("name", "?"),
                artifact.get("version", ""),
                fixed,
                _severity(vuln.get("severity")),
            )
        )
    return findings


def summarise(findings: List[Finding], fail_on: Optional[str] = None) -> Tuple[str, bool]:
    """A table and whether any finding is at or above ``fail_on``."""
    counts = {s: 0 for s in SEVERITIES}
    for f in findings:
        counts[f.severity] += 1
    lines = [
        "%d vulnerabilities: %s"
        % (len(findings), ", ".join("%s %d" % (s, counts[s]) for s in reversed(SEVERITIES)))
    ]
    ordered = sorted(findings, key=lambda f: (-SEVERITIES.index(f.severity), f.package, f.id))
    if ordered:
        lines.append("%-9s %-20s %-28s %-20s %s" % ("SEVERITY", "ID", "PACKAGE", "INSTALLED", "FIXED IN"))
        lines += [
            "%-9s %-20s %-28s %-20s %s" % (f.severity, f.id, f.package, f.installed, f.fixed or "-")
            for f in ordered
        ]
    failed = False
    if fail_on:
        threshold = SEVERITIES.index(fail_on.upper())
        failed = any(SEVERITIES.index(f.severity) >= threshold for f in findings)
    return "\n".join(lines), failed


def find_scanner() -> str:
    for name in ("trivy", "grype"):
        if shutil.which(name):
            return name
    raise NoScanner(
        "no vulnerability scanner is installed (trivy or grype): the image was NOT scanned and "
        "nothing is known about its vulnerabilities"
    )


def run_scanner(image: str, scanner: Optional[str] = None) -> List[Finding]:
    name = scanner or find_scanner()
    if name == "trivy":
        argv = ["trivy", "image", "--quiet", "--format", "json", image]
    else:
        argv = ["grype", image, "-o", "json", "-q"]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise EnvserveError("%s failed (exit %d): %s" % (name, proc.returncode, proc.stderr.strip()[-2000:]))
    doc = json.loads(proc.stdout)
    return parse_trivy(doc) if name == "trivy" else parse_grype(doc)


def pending_security_updates(
    image: str, runtime: str = "podman", env: Optional[Mapping[str, str]] = None
) -> List[str]:
    """Packages ``apt-get upgrade`` would update from the security suite, inside a throwaway container."""
    script = (
        "apt-get update -qq >/dev/null 2>&1 || { echo 'APT-UPDATE-FAILED'; exit 0; }; "
        "apt-get -s upgrade 2>/dev/null | awk '/^Inst /{print $2, $3, $4, $5, $6}'"
    )
    proc = subprocess.run(
        [runtime, "run", "--rm", "--pull=never", "--user", "0", "--entrypoint", "sh", image, "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        env=None if env is None else dict(env),
    )
    if proc.returncode != 0:
        raise EnvserveError("the OS check could not run the image: %s" % proc.stderr.strip()[-2000:])
    if "APT-UPDATE-FAILED" in proc.stdout:
        raise EnvserveError("the OS check could not reach the image's apt sources (apt-get update failed)")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return [line for line in lines if "security" in line.lower()]
