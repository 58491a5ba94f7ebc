"""Whether and how a session runs: its mode, who may trigger it, and the models allowed.

`admit` is the pipeline's gate: it either answers on the tracking comment (help, a refusal, a
config this service does not allow) and returns the session's final result, or sets the mode
the session runs in and lets it through.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.common.request import Mode, SessionRequest, Trigger
from jobs.common.settings import WorkerSettings
from jobs.gateway.pricing import family
from jobs.github.client import RepoSession
from jobs.session.help import help_text
from jobs.session.repo_config import RepoConfig, bot_allowed, mode_for_label, permission_at_least
from jobs.session.state import Session


def admit(session: Session) -> dict | None:
    """None to run the session in `session.mode`; else its final result, already answered."""
    request, config, settings, tracking = (
        session.request,
        session.config,
        session.settings,
        session.tracking,
    )
    mode = decide_mode(request, config)
    if mode is None:
        # A label or push this repository does not act on, a refresh, or an old phrase.
        return {"status": "ignored", "trigger": config.trigger}
    session.mode = tracking.mode = mode
    if not (role := may_trigger(session.github, config, request.requester)):
        tracking.answered(
            f"🚫 **@{request.requester}, only collaborators with {config.min_permission} "
            "access can ask Claude to work here.**",
            "",
        )
        return {"status": "refused", "role": role.name}
    if mode == Mode.HELP:
        unknown = f"`{request.instruction}` is not a command.\n\n" if request.instruction else ""
        if request.instruction == "fresh":
            needs = f"`{config.trigger} fresh <what to do>`"
            unknown = f"`fresh` needs a request after it: {needs}.\n\n"
        tracking.answered("ℹ️ **How to ask Claude here**", unknown + help_text(config, settings))
        return {"status": "help"}
    if mode == Mode.STOP:
        tracking.answered("ℹ️ **Nothing is running here, so there is nothing to stop.**", "")
        return {"status": "nothing_to_stop"}
    if not model_allowed(settings, config):
        tracking.answered(
            f"⚠️ **`.github/claude.yml` asks for the model `{config.model}`, which this "
            "service does not allow, so nothing ran.**",
            f"Allowed: {', '.join(settings.allowed_models or [])} (CLAUDE_ALLOWED_MODELS).",
        )
        return {"status": "invalid_config", "reason": "model not allowed"}
    if mode == Mode.REVIEW and not request.pull:
        tracking.answered("ℹ️ **`review` works on pull requests.**", help_text(config, settings))
        return {"status": "help"}
    if mode == Mode.FIX_CI and not request.pull:
        tracking.answered(
            "ℹ️ **`fix ci` needs a pull request:** it reads the failing checks of a pull "
            "request's head and pushes a fix there. This is an issue; ask on its pull request.",
            help_text(config, settings),
        )
        return {"status": "help"}
    return None


def decide_mode(request: SessionRequest, config: RepoConfig) -> Mode | None:
    """The mode this request runs in, or None when the repository does not act on it."""
    if request.mode == Mode.REFRESH:
        return None
    if request.trigger.commented and (request.phrase != config.trigger):
        return None  # the front door matched a phrase this repository no longer uses
    if request.trigger == Trigger.LABEL:
        return mode_for_label(config, request.label)
    if request.trigger == Trigger.PUSH:
        if not config.rerun_on_push:
            return None
        modes = [mode_for_label(config, name) for name in request.label.split(",") if name]
        # A new head's checks have not run yet: `fix ci` waits to be asked again.
        return next((m for m in modes if m and m != Mode.FIX_CI), None)
    return request.mode


@dataclass(frozen=True)
class Role:
    name: str  # GitHub's role_name, or "bot" for a bot the config names
    allowed: bool

    def __bool__(self) -> bool:
        return self.allowed


def may_trigger(github: RepoSession, config: RepoConfig, login: str) -> Role:
    """Whether `login` may trigger (and so stop) sessions here: GitHub's answer, never the
    payload's author_association. Bots the config names are trusted by name: an App's bot is no
    collaborator."""
    if bot_allowed(config, login):
        return Role("bot", True)
    role = github.permission(login)
    return Role(role, permission_at_least(role, config.min_permission))


def model_allowed(settings: WorkerSettings, config: RepoConfig) -> bool:
    if not (settings.allowed_models and config.model):
        return True
    return family(config.model) in {family(m) for m in settings.allowed_models}


def allowed_models(settings: WorkerSettings, config: RepoConfig) -> list[str] | None:
    """The model families the session's gateway lets through: the service's, narrowed by the
    repository's `model` (and haiku, for the CLI's small side requests); None: any."""
    allowed = {family(m) for m in settings.allowed_models} if settings.allowed_models else None
    if config.model:
        wanted = {family(config.model), "haiku"}
        allowed = wanted if allowed is None else allowed & wanted
    return None if allowed is None else sorted(allowed)
