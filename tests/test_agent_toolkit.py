"""Small real tools for the agent tests (importable as a tool module via
$TISSUETALK_TOOL_MODULES=test_agent_toolkit), and the tests of registering them."""
import os
import time

import numpy as np
from pydantic import BaseModel, Field

from tools.errors import UnknownKeyError
from tools.registry import REGISTRY, register


class NapParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    seconds: float = Field(30.0, ge=0, le=600, description="how long to sleep")


class NapResult(BaseModel):
    slept: float


class MeanParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    gene: str = Field(description="gene symbol")
    group_key: str = Field("ground_truth", description="obs column with the groups")
    group: str | None = Field(None, description="report only this group")


class MeanResult(BaseModel):
    gene: str
    means: dict[str, float]


class FlagParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")


class FlagResult(BaseModel):
    n_flagged: int


class ScoreResult(BaseModel):
    mean_score: float


class CountParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    groupby: str = Field(description="obs column to count")


class CountResult(BaseModel):
    counts: dict[str, int]


class PlotResult(BaseModel):
    figure: str


def register_test_tools():
    @register("nap", NapParams, NapResult, intents=("take a nap",))
    def nap(adata, p: NapParams) -> NapResult:
        """Sleep (a stand-in for a long tool); writes adata.obs['napped'] first."""
        adata.obs["napped"] = 1
        t0 = time.time()
        while time.time() - t0 < p.seconds:
            time.sleep(0.05)
        return NapResult(slept=round(time.time() - t0, 2))

    @register("group_mean", MeanParams, MeanResult, intents=("mean expression",))
    def group_mean(adata, p: MeanParams) -> MeanResult:
        """Mean expression of one gene per group."""
        if p.gene not in adata.var_names:
            raise UnknownKeyError(f"gene '{p.gene}' not found")
        x = np.asarray(adata[:, p.gene].X.todense() if hasattr(adata.X, "todense") else adata[:, p.gene].X).ravel()
        g = adata.obs[p.group_key].astype(str).to_numpy()
        keys = [p.group] if p.group else sorted(set(g))
        return MeanResult(gene=p.gene, means={k: round(float(x[g == k].mean()), 3) for k in keys})

    @register("flag_spots", FlagParams, FlagResult, intents=("flag spots",))
    def flag_spots(adata, p: FlagParams) -> FlagResult:
        """Flag spots with above-median total counts. Writes adata.obs['flag']."""
        tot = np.asarray(adata.X.sum(axis=1)).ravel()
        adata.obs["flag"] = tot > np.median(tot)
        return FlagResult(n_flagged=int(adata.obs["flag"].sum()))

    @register("flag_score", FlagParams, ScoreResult, intents=("score the flags",))
    def flag_score(adata, p: FlagParams) -> ScoreResult:
        """Share of flagged spots (needs obs['flag'])."""
        if "flag" not in adata.obs:
            raise UnknownKeyError("obs column 'flag' not found")
        return ScoreResult(mean_score=round(float(adata.obs["flag"].mean()), 4))

    @register("plot_counts", FlagParams, PlotResult, intents=("histogram of counts",), writes_files=True)
    def plot_counts(adata, p: FlagParams, workdir=None) -> PlotResult:
        """Histogram of total counts per spot (PNG artefact)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(3, 2))
        ax.hist(np.asarray(adata.X.sum(axis=1)).ravel(), bins=20)
        fig.savefig(workdir / "counts_hist.png", dpi=60)
        plt.close(fig)
        return PlotResult(figure="counts_hist.png")

    @register("explode", FlagParams, FlagResult, intents=("explode",))
    def explode(adata, p: FlagParams) -> FlagResult:
        """A tool with a bug: writes adata.obs['half'] and then fails."""
        adata.obs["half"] = 1
        raise ValueError("bug in the tool")

    @register("stop_me", FlagParams, FlagResult, intents=("stop me",))
    def stop_me(adata, p: FlagParams) -> FlagResult:
        """Interrupted by the user (Ctrl-C) halfway: writes adata.obs['half'] first."""
        adata.obs["half"] = 1
        raise KeyboardInterrupt

    @register("split_halves", FlagParams, FlagResult, intents=("split into halves",))
    def split_halves(adata, p: FlagParams) -> FlagResult:
        """Label spots 'upper' / 'lower' by y. Writes adata.obs['side']."""
        import pandas as pd

        y = np.asarray(adata.obsm["spatial"])[:, 1]
        adata.obs["side"] = pd.Categorical(np.where(y > np.median(y), "upper", "lower"))
        return FlagResult(n_flagged=int((y > np.median(y)).sum()))

    @register("count_groups", CountParams, CountResult, intents=("count spots per",))
    def count_groups(adata, p: CountParams) -> CountResult:
        """Number of spots per category of an obs column."""
        if p.groupby not in adata.obs:
            raise UnknownKeyError(f"obs column '{p.groupby}' not found")
        return CountResult(counts={str(k): int(v) for k, v in adata.obs[p.groupby].value_counts().items()})

    return NAMES


NAMES = ["nap", "group_mean", "flag_spots", "flag_score", "plot_counts", "explode", "stop_me",
         "split_halves", "count_groups"]
if "test_agent_toolkit" in os.environ.get("TISSUETALK_TOOL_MODULES", ""):
    register_test_tools()  # a subprocess (chat / ask) that was asked to load these tools


def unregister():
    for n in NAMES:
        REGISTRY.pop(n, None)


def test_registered_tools_are_offered_to_the_agent(tmp_path):
    from agent.toolset import discover, langchain_tools

    register_test_tools()
    try:
        specs, _ = discover()
        assert {"nap", "group_mean", "describe_dataset"} <= set(specs)
        schema = {t.name: t for t in langchain_tools(specs)}["nap"].args_schema.model_json_schema()
        assert schema["properties"]["seconds"]["maximum"] == 600
    finally:
        unregister()
