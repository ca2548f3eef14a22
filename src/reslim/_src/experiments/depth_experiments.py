"""Former home of the depth kinds, split into :mod:`.depth` (data, spec sections, the kinds' base),
:mod:`.gia_gap`, :mod:`.collapse`, :mod:`.transfer` and :mod:`reslim._src.report.depth` (figures).
These re-exports keep imports written before the split working; new code imports from those."""

from ..report.depth import plot_vs_depth as plot_vs_depth
from .collapse import Collapse as Collapse
from .collapse import CollapseSpec as CollapseSpec
from .depth import AnalysisSpec as AnalysisSpec
from .depth import DataSpec as DataSpec
from .depth import TrainSpec as TrainSpec
from .depth import load_data as load_data
from .depth import teacher_data as teacher_data
from .gia_gap import GAP_METRICS as GAP_METRICS
from .gia_gap import GiaGap as GiaGap
from .gia_gap import GiaGapSpec as GiaGapSpec
from .transfer import SweepParam as SweepParam
from .transfer import Transfer as Transfer
from .transfer import TransferSpec as TransferSpec
