"""An admin starts a training round from the form and watches it run (progress, metric charts
and logs arriving without a reload), cancels one, then promotes, compares and ranks model
versions, in real Chromium. No worker runs here: the test plays the worker's part through
rounds.py, the same calls workers/training.py makes (tests/workers covers the real worker)."""

from __future__ import annotations

import math
import re

import pytest
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from tests.browser.conftest import SCREENSHOTS
from tests.browser.test_manage import sign_in
from tests.conftest import MakeUser
from tests.webapp.annotation.conftest import MakeProject, make_project  # noqa: F401 (fixture)
from tests.webapp.training import factories
from webapp import background
from webapp.accounts.models import User
from webapp.annotation.models import ModelVersion, Project, Response
from webapp.annotation.questions import TaskType
from webapp.training import rounds, services
from webapp.training.models import RoundState, TrainingRound
from webapp.training.versions import GALLERY_SIZE

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
WORKER = "gpu-worker-1@h200"

PROMPTS = [
    (
        "My order arrived damaged. What should I do?",
        "Sorry to hear that. Send us a photo of the damage and your order number, and we will "
        "ship a replacement within two days; you keep the damaged one.",
        "You can return it.",
    ),
    (
        "How do I reset my password?",
        "Open Settings → Account → Password, choose “Forgot password” and follow the link we "
        "email you. The link works for 30 minutes.",
        "Go to settings and change it there, or contact support if it does not work.",
    ),
    (
        "Can I change the delivery address after ordering?",
        "Yes, until the parcel ships: open the order, choose “Edit address”. After shipping, "
        "ask the carrier to redirect it with the tracking number in your email.",
        "No.",
    ),
    (
        "Do you ship to Norway?",
        "Yes. Delivery to Norway takes 4 to 6 working days; import VAT is charged at checkout, so "
        "nothing is due on arrival.",
        "We ship to many countries.",
    ),
    (
        "Why was I charged twice?",
        "The second line is a card authorisation, not a charge: it disappears within 3 days. If "
        "both amounts are still there after that, reply with the last four digits of the card.",
        "Please check with your bank.",
    ),
    (
        "How long does a refund take?",
        "Refunds go out the day we receive the return; your bank shows them within 5 working "
        "days. You get an email with the amount when it leaves us.",
        "About a week or two, it depends.",
    ),
]


@pytest.fixture
def sent_tasks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[int]]]:
    """Background tasks the web side sends, recorded instead of reaching a broker."""
    sent: list[tuple[str, list[int]]] = []
    monkeypatch.setattr(
        background.app, "send_task", lambda name, args, **options: sent.append((name, args))
    )
    return sent


@pytest.fixture
def project(make_project: MakeProject) -> Project:  # noqa: F811
    """A pairwise project served by a pretrained base model."""
    project = make_project(TaskType.PAIRWISE, name="Support answers", slug="support-answers")
    base = factories.version("tiny-base", metrics={"pretrain": {"val_loss": 4.31}})
    project.serving_version = base
    project.save()
    return project


def curve(start: float, end: float, step: int, steps: int, wiggle: float) -> float:
    """A smooth trend from start to end with a deterministic wiggle: a plausible metric."""
    share = 1 - math.exp(-4 * step / steps)
    return round(start + (end - start) * share + wiggle * math.sin(step * 1.7), 4)


def play_reward_stage(round_id: int, upto: int, steps: int = 40) -> None:
    rounds.heartbeat(
        round_id,
        WORKER,
        stage="reward",
        stage_step=upto,
        stage_steps=steps,
        message=f"Fitting the reward model on 412 pairs: step {upto} of {steps}.",
    )
    for step in range(1, upto + 1):
        values = {
            "loss": curve(0.69, 0.47, step, steps, 0.02),
            "accuracy": curve(0.5, 0.74, step, steps, 0.015),
        }
        rounds.record_metrics(round_id, "reward", step, values)


def test_an_admin_starts_a_round_watches_it_run_and_cancels_one(
    page: Page,
    live_server: LiveServer,
    admin_user: User,
    project: Project,
    sent_tasks: list[tuple[str, list[int]]],
) -> None:
    sign_in(page, live_server, admin_user, "/training/")
    expect(page.get_by_text("No round yet.")).to_be_visible()
    page.get_by_role("link", name="Start a round").first.click()
    form = page.locator("#round-form")
    form.get_by_label("Project").select_option("support-answers")
    form.get_by_label("Kind").select_option("full")
    form.get_by_label("Algorithm").select_option("ppo")
    form.get_by_label("Preset").select_option("recommended")
    form.get_by_label("Minimum agreement").fill("0.6")

    overrides = '{"ppo": {"steps": 20}, "generate": {"prompts": 40}}'
    form.get_by_label("Overrides (JSON)").fill(overrides)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "training-start.png", full_page=True)

    # Bad JSON is refused beside the field (422, the form swapped in place), nothing written.
    form.get_by_label("Overrides (JSON)").fill('{"ppo": {"steps": 20}')
    form.get_by_role("button", name="Queue the round").click()
    expect(page.locator("#round-form")).to_contain_text("Overrides are not valid JSON")
    assert not TrainingRound.objects.exists() and sent_tasks == []
    form = page.locator("#round-form")
    expect(form.get_by_label("Minimum agreement")).to_have_value("0.6")  # kept
    form.get_by_label("Overrides (JSON)").fill(overrides)
    form.get_by_role("button", name="Queue the round").click()

    expect(page).to_have_url(re.compile(r"/training/\d+/$"))
    started = TrainingRound.objects.get()
    assert sent_tasks == [("training.run_round", [started.pk])]
    assert started.config["ppo"]["steps"] == 20 and started.label_filter["min_agreement"] == 0.6
    progress = page.locator("#round-progress")
    expect(progress).to_have_attribute("data-state", "queued")
    expect(progress).to_contain_text("#1 in the queue")

    # The worker's part, while the page polls its fragment (no reload).
    page.evaluate("window.notReloaded = true")
    assert rounds.claim(started.pk, WORKER)
    rounds.log(started.pk, "Label snapshot: 412 preference pairs, 0 demonstrations.")
    assert rounds.finish_stage(started.pk, WORKER, "labels")
    rounds.log(started.pk, "No new demonstrations: SFT skipped.")
    assert rounds.finish_stage(started.pk, WORKER, "sft")
    play_reward_stage(started.pk, upto=12)
    expect(progress).to_have_attribute("data-state", "running")
    expect(progress).to_contain_text("step 12 of 40")
    expect(progress.locator('[data-metric="reward:loss"]')).to_be_visible()
    play_reward_stage(started.pk, upto=40)
    assert rounds.finish_stage(started.pk, WORKER, "reward")
    for step in range(1, 15):
        values = {
            "score": curve(-0.2, 0.9, step, 30, 0.06),
            "kl": curve(0.0, 0.05, step, 30, 0.003),
            "loss": curve(0.4, 0.1, step, 30, 0.05),
        }
        rounds.record_metrics(started.pk, "ppo", step, values)
    rounds.heartbeat(
        started.pk, WORKER, stage="ppo", stage_step=14, stage_steps=20, message="PPO step 14 of 20."
    )
    rounds.log(started.pk, "Reward model: held-out accuracy 0.74 on 46 pairs.")
    expect(progress).to_contain_text("step 14 of 20")
    expect(progress.locator('[data-metric="ppo:kl"]')).to_be_visible()
    expect(progress.locator(".stages li.done")).to_have_count(3)
    expect(progress.locator(".log")).to_contain_text("held-out accuracy 0.74")
    assert page.evaluate("window.notReloaded") is True
    page.screenshot(path=SCREENSHOTS / "training-round.png", full_page=True)

    # A second round waits behind it; the admin cancels it from its page.
    waiting = services.create_round(admin_user, project, "dpo", "ci")
    page.get_by_role("link", name="Rounds", exact=True).click()
    expect(page.locator(f'tr[data-round="{waiting.pk}"]')).to_contain_text("#1 in queue")
    expect(page.locator(f'tr[data-round="{started.pk}"]')).to_contain_text("Running")
    page.screenshot(path=SCREENSHOTS / "training-rounds.png", full_page=True)
    page.get_by_role("link", name=str(waiting.pk), exact=True).click()
    page.get_by_role("button", name="Cancel round").click()
    waiting_progress = page.locator("#round-progress")
    expect(waiting_progress).to_have_attribute("data-state", "cancelled")
    expect(
        waiting_progress.get_by_role("button", name="Resume from the last checkpoint")
    ).to_be_visible()
    waiting.refresh_from_db()
    assert waiting.state == RoundState.CANCELLED

    # Cancelling the running one asks its worker to stop; the page follows when it has.
    page.goto(f"{live_server.url}/training/{started.pk}/")
    page.get_by_role("button", name="Cancel round").click()
    expect(progress).to_contain_text("cancelling")
    assert rounds.heartbeat(started.pk, WORKER) == "cancel"
    assert rounds.mark_cancelled(started.pk, WORKER)
    expect(progress).to_have_attribute("data-state", "cancelled")
    expect(progress.get_by_role("button", name="Resume from the last checkpoint")).to_be_visible()


@pytest.fixture
def trained(project: Project, make_user: MakeUser) -> Project:
    """Two rounds after the base model, with people's votes: r2 > r1 > base."""
    base = ModelVersion.objects.get(name="tiny-base")
    r1 = factories.version(
        "support-answers-r1",
        parent=base,
        metrics={
            "held_out": {"pairwise_accuracy": 0.71},
            "kl": 3.2,
            "reward": 0.41,
            "proxy_win_rate": 0.64,
            "proxy_win_rate_low": 0.52,
            "proxy_win_rate_high": 0.75,
        },
    )
    r2 = factories.version(
        "support-answers-r2",
        parent=r1,
        metrics={
            "held_out": {"pairwise_accuracy": 0.76},
            "kl": 4.7,
            "reward": 0.83,
            "proxy_win_rate": 0.61,
            "proxy_win_rate_low": 0.5,
            "proxy_win_rate_high": 0.71,
        },
    )
    for number, (version, parent) in enumerate(((r1, base), (r2, r1))):
        factories.training_round(
            project,
            RoundState.SUCCEEDED,
            base_version=parent,
            result_version=version,
            labels_sha256=f"{number + 3}f9c2e" * 9 + "0",
            labels_count=412 + 180 * number,
            stages_done=["labels", "sft", "reward", "ppo", "evaluate", "register", "generate"],
            samples_added=60,
            minutes_ago=60 - 30 * number,
        )
    voters = [make_user(name, "annotator") for name in ("ada", "bo", "cy")]
    for who in voters:
        factories.votes(project, who, r1, base, a_wins=6, b_wins=2)
        factories.votes(project, who, r2, r1, a_wins=5, b_wins=2)
        factories.votes(project, who, r2, base, a_wins=4, b_wins=1)
        factories.vote(factories.pair_item(project, r2, r1), who, "tie")
        factories.vote(factories.pair_item(project, r1, r2), who, "both_bad")
    for text, better, worse in PROMPTS:
        asked = factories.prompt(project, text)
        Response.objects.create(prompt=asked, text=worse, model_version=r1)
        Response.objects.create(prompt=asked, text=better, model_version=r2)
    return project


def test_an_admin_promotes_compares_and_ranks_versions(
    page: Page, live_server: LiveServer, admin_user: User, trained: Project
) -> None:
    sign_in(page, live_server, admin_user, "/training/projects/support-answers/versions/")
    newest = page.locator('tr[data-version="support-answers-r2"]')
    expect(newest).to_contain_text("support-answers-r1")  # its parent
    expect(newest).to_contain_text("592")  # labels in its snapshot
    serving = page.locator("tr.serving")
    expect(serving).to_have_attribute("data-version", "tiny-base")
    newest.get_by_role("button", name="Promote to serving").click()
    expect(serving).to_have_attribute("data-version", "support-answers-r2")
    expect(newest.get_by_role("button", name="Promote to serving")).to_have_count(0)
    trained.refresh_from_db()
    assert trained.serving_version is not None
    assert trained.serving_version.name == "support-answers-r2"
    page.screenshot(path=SCREENSHOTS / "training-versions.png", full_page=True)

    newest.get_by_role("link", name="Compare with parent").click()
    expect(page.locator("#head-to-head")).to_contain_text("69%")  # 15 wins and 3 ties in 24
    expect(page.locator("#gallery .sample")).to_have_count(GALLERY_SIZE)
    expect(page.locator("#figures")).to_contain_text("win_rate_low")
    expect(page.locator("#gallery")).to_contain_text("ship a replacement within two days")
    page.screenshot(path=SCREENSHOTS / "training-compare.png", full_page=True)

    page.get_by_role("link", name="Leaderboard").click()
    rows = page.locator("table.leaderboard-table tbody tr")
    expect(rows).to_have_count(3)
    names = [row.get_attribute("data-version") for row in rows.all()]
    assert names == ["support-answers-r2", "support-answers-r1", "tiny-base"]
    expect(page.get_by_text("63 human votes", exact=False)).to_be_visible()
    page.screenshot(path=SCREENSHOTS / "training-leaderboard.png", full_page=True)
