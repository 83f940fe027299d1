// The package ships no types; this is the shape its README documents (values stay strings).
declare module 'parse-prometheus-text-format' {
  export interface PrometheusSample {
    labels?: Record<string, string>
    value?: string
    /** Histograms: upper bound -> cumulative count. */
    buckets?: Record<string, string>
    /** Summaries: quantile -> value. */
    quantiles?: Record<string, string>
    count?: string
    sum?: string
  }
  export interface PrometheusFamily {
    name: string
    help: string
    type: 'COUNTER' | 'GAUGE' | 'HISTOGRAM' | 'SUMMARY' | 'UNTYPED'
    metrics: PrometheusSample[]
  }
  export default function parsePrometheusTextFormat (text: string): PrometheusFamily[]
}
