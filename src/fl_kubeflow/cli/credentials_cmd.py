"""``fl-kubeflow credentials``: issue, revoke and list the credentials of a federation.

``issue`` enrols fresh credentials in a registry file (created if absent) and writes
one credential folder per client (``OUT/<id>/``: the files ``client_id``, ``token``,
optionally ``ca.crt`` and ``server``, owner-only), each to be handed to its owner
alone; with ``--secret-manifests`` also one Kubernetes Secret manifest per client
and one for the registry (JSON, for ``kubectl apply -f``); with ``--kube-namespace``
it creates those Secrets through the API. The registry keeps token digests only,
and no token is ever printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fl_kubeflow.cli.options import positive_int
from fl_kubeflow.credentials import (
    CLIENT,
    OBSERVER,
    ClientCredential,
    CredentialError,
    Registry,
    issue,
    write_credential_dir,
    write_private_file,
)

SECRETS_FOLDER = "secrets"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "credentials",
        help="issue, revoke and list per-client credentials",
        description="Issue, revoke and list the credentials of a federation: one token per "
        "client, the server's registry keeping only their digests.",
    )
    commands = parser.add_subparsers(dest="credentials_command", required=True, metavar="ACTION")
    issuing = commands.add_parser(
        "issue",
        help="enrol clients and write their credentials",
        description="Enrol each ID in the registry (created if absent) and write its "
        "credential folder OUT/ID; ids already enrolled are refused.",
    )
    _registry_option(issuing)
    issuing.add_argument("--out", type=Path, required=True, help="folder for the credentials")
    issuing.add_argument("ids", nargs="+", metavar="ID", help="client ids (or observer names)")
    issuing.add_argument(
        "--role",
        choices=[CLIENT, OBSERVER],
        default=CLIENT,
        help="client (takes part) or observer (may only read the run's status)",
    )
    issuing.add_argument(
        "--max-examples",
        type=positive_int,
        default=None,
        help="the most examples each of these clients may claim for one update or evaluation",
    )
    issuing.add_argument(
        "--ca", type=Path, default=None, help="PEM CA certificate clients trust (their ca.crt)"
    )
    issuing.add_argument(
        "--server", default=None, help="the server's address, written into each credential"
    )
    issuing.add_argument(
        "--secret-manifests",
        action="store_true",
        help=f"also write OUT/{SECRETS_FOLDER}/NAME.json: a Secret manifest per client and "
        "one for the registry",
    )
    issuing.add_argument(
        "--secret-name-format",
        default=None,
        help="a client's Secret name, with {client_id} (default: fl-credential-{client_id})",
    )
    _kube_options(issuing, "create (or replace) the clients' and the registry's Secrets")
    issuing.set_defaults(run=run_issue)

    revoking = commands.add_parser(
        "revoke",
        help="revoke credentials: a running server refuses them from its next reload",
        description="Revoke each ID in the registry; a server watching the file drops "
        "those clients from its run within --credentials-reload seconds.",
    )
    _registry_option(revoking)
    revoking.add_argument("ids", nargs="+", metavar="ID", help="enrolled ids to revoke")
    revoking.add_argument(
        "--registry-manifest",
        type=Path,
        default=None,
        help="also write the registry's Secret manifest here (for kubectl apply -f)",
    )
    _kube_options(revoking, "replace the registry's Secret (a server mounting it reloads it)")
    revoking.set_defaults(run=run_revoke)

    listing = commands.add_parser(
        "list", help="the registry's principals", description="List the registry's principals."
    )
    _registry_option(listing)
    listing.add_argument("--json", action="store_true", help="as a JSON object")
    listing.set_defaults(run=run_list)


def _kube_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--registry-secret",
        default=None,
        help="the registry's Secret name (default: fl-credential-registry)",
    )
    parser.add_argument(
        "--kube-namespace",
        default=None,
        help=f"{what} in this namespace through the Kubernetes API (kubeconfig or in-cluster)",
    )
    parser.add_argument(
        "--kubeconfig", type=Path, default=None, help="kubeconfig for --kube-namespace"
    )


def _registry_secret(args: argparse.Namespace) -> str:
    from fl_kubeflow.cli.credential_manifests import DEFAULT_REGISTRY_SECRET

    return args.registry_secret or DEFAULT_REGISTRY_SECRET


def _apply(args: argparse.Namespace, manifests: list[dict[str, Any]]) -> None:
    """Create or replace these Secrets in --kube-namespace, if given."""
    if not args.kube_namespace:
        return
    from fl_kubeflow.cli.credential_manifests import apply_manifests, manifest_name

    apply_manifests(manifests, args.kube_namespace, args.kubeconfig)
    for manifest in manifests:
        print(f"Secret {args.kube_namespace}/{manifest_name(manifest)} applied")


def _registry_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry", type=Path, required=True, metavar="R.json", help="the registry file"
    )


def run_issue(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from fl_kubeflow.cli import credential_manifests as manifests

    try:
        registry = Registry.load(args.registry) if args.registry.exists() else Registry()
        ca_pem = args.ca.read_text() if args.ca else None
        issued: list[ClientCredential] = []
        for client_id in args.ids:
            credential = issue(client_id)
            registry = registry.enrol(credential, role=args.role, max_examples=args.max_examples)
            issued.append(credential)
        secrets = [
            manifests.credential_manifest(
                c,
                args.secret_name_format or manifests.DEFAULT_NAME_FORMAT,
                ca_pem,
                args.server,
            )
            for c in issued
        ]
        names = [manifests.manifest_name(m) for m in secrets]
        if len(set(names)) != len(names):
            raise ValueError(f"these ids give clashing Secret names: {sorted(names)}")
        secrets.append(manifests.registry_manifest(registry, _registry_secret(args)))
    except OSError as exc:
        parser.error(f"cannot read {exc.filename}: {exc.strerror}")
    except (CredentialError, ValueError) as exc:
        parser.error(str(exc))
    # The folders first: a registry enrolling a token nobody holds would refuse to issue it again.
    for credential in issued:
        write_credential_dir(credential, args.out / credential.client_id, ca_pem, args.server)
    if args.secret_manifests:
        for manifest in secrets:
            path = args.out / SECRETS_FOLDER / f"{manifests.manifest_name(manifest)}.json"
            write_private_file(path, manifests.manifest_text(manifest))
    registry.save(args.registry)
    _apply(args, secrets)
    for credential, name in zip(issued, names, strict=True):
        where = args.out / credential.client_id
        print(f"issued {credential.client_id} ({args.role}): {where} (Secret {name})")
    print(f"registry {args.registry}: {len(registry.enrolments)} principals")
    return 0


def run_revoke(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from fl_kubeflow.cli.credential_manifests import manifest_text, registry_manifest

    try:
        registry = Registry.load(args.registry)
        for name in args.ids:
            registry = registry.revoke(name)
        manifest = registry_manifest(registry, _registry_secret(args))
    except (CredentialError, ValueError) as exc:
        parser.error(str(exc))
    registry.save(args.registry)
    print(f"revoked {', '.join(args.ids)} in {args.registry}")
    if args.registry_manifest is not None:
        write_private_file(args.registry_manifest, manifest_text(manifest))
    _apply(args, [manifest])
    return 0


def run_list(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        registry = Registry.load(args.registry)
    except CredentialError as exc:
        parser.error(str(exc))
    rows = principals(registry)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'name':<24} {'role':<9} {'max_examples':>12}  revoked")
    for name, row in rows.items():
        limit = "-" if row["max_examples"] is None else str(row["max_examples"])
        print(f"{name:<24} {row['role']:<9} {limit:>12}  {'yes' if row['revoked'] else 'no'}")
    return 0


def principals(registry: Registry) -> dict[str, dict[str, Any]]:
    """Each principal's role, declared limit and whether it is revoked: never its digest."""
    return {
        name: {
            "role": e.role,
            "max_examples": e.max_examples,
            "revoked": registry.is_revoked(name),
        }
        for name, e in sorted(registry.enrolments.items())
    }
